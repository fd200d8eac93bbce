"""Read-only views over the store for people: route reports and artifact explanations (versions, diffs, log)."""
