"""The doors: HTTP routes, Gradio tabs and the command line. Thin; each calls a service, none imports another."""
