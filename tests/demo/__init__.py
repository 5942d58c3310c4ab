"""Browser tests of the notes demo (demo_app) and tests of its server and command."""
