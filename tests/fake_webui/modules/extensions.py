"""modules.extensions: the installed extensions, as A1111 1.10 lists them (active() = the enabled ones)."""
import os


class Extension:
    def __init__(self, name, path, enabled=True, is_builtin=False):
        self.name, self.path, self.enabled, self.is_builtin = name, path, enabled, is_builtin


extensions = []


def list_extensions(extensions_dir):
    extensions.clear()
    for name in sorted(os.listdir(extensions_dir)):
        path = os.path.join(extensions_dir, name)
        if os.path.isdir(path):
            extensions.append(Extension(name, path))


def active():
    return [x for x in extensions if x.enabled]
