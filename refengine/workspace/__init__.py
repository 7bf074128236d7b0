"""The workspace: a converted model on disk, laid out for the kernels (format: format.py, docs/workspace.md).

    refengine.workspace.convert.convert(spec, ConvertOptions(dst=...))   model -> workspace
    refengine.workspace.reader.load_workspace(path)                      workspace -> LoadedModel
    refengine.model.loader.load_model(path)                              the same, for any model spec
"""

from refengine.workspace.format import FORMAT_VERSION, WorkspaceError, is_workspace

__all__ = ["FORMAT_VERSION", "WorkspaceError", "is_workspace"]
