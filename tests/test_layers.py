"""The folders of clawd/ are the stages of its data flow, and imports only run downhill.

    core  <  config  <  sources  <  decide  <  keep  <  serve  <  act  <  daemon  <  cli

A module may import from its own stage and from the stages left of it, never from one to
its right: sources never reach into the decisions, the rules never into the stores, and
nothing but the composition root (daemon/) and the command line (cli/) sees everything.
`serve` (the control socket, metrics, systemd notify, status text) sits below `act`
because the backup and skills commands ask the control socket whether a daemon runs.
The graph is the one the cycle test reads (every import, also function-local and
type-only ones).
"""

from __future__ import annotations

from test_import_cycles import module_graph

STAGES = ("core", "config", "sources", "decide", "keep", "serve", "act", "daemon", "cli")


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def uphill_imports(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in sorted(graph.items()):
        here = stage_of(module)
        if here is None:
            continue
        for target in sorted(targets):
            there = stage_of(target)
            if there is not None and STAGES.index(there) > STAGES.index(here):
                wrong.append(f"{module} ({here}) imports {target} ({there})")
    return wrong


def test_every_module_lives_in_a_stage() -> None:
    loose = [m for m in module_graph() if m != "clawd" and stage_of(m) not in STAGES]
    assert loose == [], f"modules outside the stages {STAGES}: {loose}"


def test_imports_only_run_downhill() -> None:
    wrong = uphill_imports(module_graph())
    assert wrong == [], "imports against the data flow:\n" + "\n".join(wrong)


def test_the_check_sees_an_uphill_import() -> None:
    # A guard on the check itself: a rule that reaches into the store is reported.
    graph = {"clawd.decide.rules": {"clawd.keep.store.repository"}, "clawd.keep.keeper": set()}
    assert uphill_imports(graph) == [
        "clawd.decide.rules (decide) imports clawd.keep.store.repository (keep)"
    ]
