"""What an SSH proof does to a peer's record: verified or not, its trust, its lead number.

A peer is verified once a connection with a trusted host key read the peer's own
state.json naming this gateway id (clawd/sources/identity.py); the lead number it holds
there is the one the election uses, never an announcement's. Pure, like the reconciler.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from clawd.core.model import Instance
from clawd.core.observations import PeerProof
from clawd.core.trust import Trust, secrets_allowed
from clawd.decide.view import Decision, Note, PeerRecord

NO_STATE_FILE = "(no readable state.json)"


def apply_proof(d: Decision, record: PeerRecord, proof: PeerProof | None) -> PeerRecord:
    """`record` after a ping round that read the peer's identity (`proof`), if it did."""
    if proof is None:
        return record
    inst = record.instance
    if proof.gateway_id is None and record.static and secrets_allowed(proof.trust):
        # No state.json (claw-clan lost, or not clawd's yet), but the operator named this
        # id at this address in config.json and vouched for its key (known_hosts, or
        # `clawd peer trust`): that is proof enough; the lead number is the config's.
        proof = dataclasses.replace(proof, gateway_id=inst.gateway_id)
    if proof.proves(inst.gateway_id):
        if proof.lead_number is not None and proof.lead_number != inst.lead_number:
            inst = dataclasses.replace(inst, lead_number=proof.lead_number)
            d.instances.append(inst)
        if not record.verified or record.trust is not proof.trust or inst is not record.instance:
            d.moved = True  # leadership counts verified peers and their lead numbers
        return dataclasses.replace(
            record, instance=inst, verified=True, trust=proof.trust, answered_as=None
        )
    answered_as = proof.gateway_id or NO_STATE_FILE
    if record.verified:
        d.moved = True
    if answered_as != record.answered_as:  # once per answer, not once per check
        d.notes.append(
            Note(
                "peer_identity_mismatch",
                inst.gateway_id,
                {"host": inst.ip, "answered_as": answered_as, "fingerprint": proof.fingerprint},
            )
        )
    return dataclasses.replace(record, verified=False, trust=Trust.NONE, answered_as=answered_as)


def hint_lead_differs(record: PeerRecord, announced: int | None) -> bool:
    """Does an announcement say a verified peer's lead number changed? (Then its state.json
    is read again at its next round: the announcement itself decides nothing.)"""
    return record.verified and announced is not None and announced != record.instance.lead_number


def merge_identity(old: Instance, new: Instance, now: datetime) -> Instance:
    """Take what the announcement says; keep what it leaves out."""
    merged = dataclasses.replace(
        old,
        name=new.name or old.name,
        ip=new.ip or old.ip,
        ssh_user=new.ssh_user or old.ssh_user,
        ssh_port=new.ssh_port or old.ssh_port,
        lead_number=new.lead_number if new.lead_number is not None else old.lead_number,
        version=new.version or old.version,
        github_repo=new.github_repo or old.github_repo,
    )
    if merged == old:
        return old
    return dataclasses.replace(merged, updated_at=now)
