"""The Gradio tab (imports gradio; the core never does). Entry points: tab.build_tab, server.serve,
settings.add_settings."""
