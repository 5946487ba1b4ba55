"""The web app: its server and the generation loop it runs (also driven from Python)."""
