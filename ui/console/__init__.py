"""Staff console (Gradio): app.py wires Blocks, handlers.py holds the plain event handlers."""
