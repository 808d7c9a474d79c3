"""A fake of the WebUI's `modules` package: only what docs/host-webui.md lists and the extension uses."""
