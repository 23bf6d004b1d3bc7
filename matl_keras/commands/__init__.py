"""The commands of `matl-keras`, one module each: `job` (running the job
the gin files configure), `plugins`, `evaluate`, `explain`, `predict`,
`probe`, `report` (and the report plugin contract), `audit` and `export`.
The CLI parses the flags and gin and calls them; they read runs through
`matl_keras.runs`. Nothing below this layer imports it."""
