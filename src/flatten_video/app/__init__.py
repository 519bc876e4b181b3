"""The application layer shared by the command line and the web UI: runtime (device, dtype, model
loading, error lines), the settings schema, and one edit from file to file."""
