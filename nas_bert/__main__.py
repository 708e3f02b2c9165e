from nas_bert.cli import app

if __name__ == "__main__":  # a spawned timing process imports this module as __mp_main__: it must not run the CLI
    app(prog_name="nas-bert")
