"""Directory trees as {relative path: bytes}, for tests that write and compare file sets."""
import os


def make_tree(root, files):
    for relative, data in files.items():
        full = root / relative
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_bytes(data)


def tree_of(root):
    out = {}
    for directory, _, names in os.walk(root):
        for name in names:
            full = os.path.join(directory, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, root)] = f.read()
    return out
