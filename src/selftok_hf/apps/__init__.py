"""The command-line and browser apps: ``selftok`` (``cli``), ``selftok-quickstart`` (``quickstart``) and
``selftok demo`` (``demo``, Gradio). They sit on top of everything else; nothing imports them."""
