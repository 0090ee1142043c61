from repro.cli import app

app(prog_name="repro")
