"""Reports: `capalign report RUN` turns a study run folder into a static HTML page (report.py)."""
