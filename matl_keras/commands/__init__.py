"""The commands of `matl-keras` beside running a job, one module each
(`evaluate`, `explain`, `predict`, `probe`, `report`; `export` is
`matl_keras.export`): the CLI parses the flags and calls them; they read
runs through `matl_keras.runs`."""
