"""The few helpers every stage shares: errors and exit codes, string enums, safe names, atomic
writes that never follow links, redaction of credentials, strict JSON, retries, signals and the
workers' messages to the driver. Nothing here knows a source, a recipe or a dataset."""
