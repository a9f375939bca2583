"""The Gradio layer (the only part of the library that imports gradio): shared helpers and one module per
tab as tabs move out of app.py. Handlers get the backend (a ModelCache) passed in, never a module global."""
