"""Skills under `<home>/skills`, synced from the shared repository and audited."""

from clawd.skills.results import SyncResult
from clawd.skills.syncer import SkillSyncer

__all__ = ["SkillSyncer", "SyncResult"]
