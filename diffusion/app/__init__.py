"""The Gradio layer, the top of the library: the only part that imports gradio, and nothing in the library imports
it. Shared helpers and one module per tab. Handlers get the backend (a ModelCache) passed in, never a module global."""
