"""The Gradio app (installed as ``stylekit.apps``)."""
