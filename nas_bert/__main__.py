from nas_bert.cli import app

app()
