"""The composition root: builds the components (build), runs them in one TaskGroup with
signals that only set flags (app), fans a reload out to them (live), answers `clawd
status` (status)."""
