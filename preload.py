"""Command-line flags the extension honours; the WebUI calls preload(parser) before parsing its arguments.

--dreambooth-tab-models-path DIR   where this tab's Dreambooth models live (default: <models>/dreambooth);
                                   read back as shared.cmd_opts.dreambooth_tab_models_path by dreambooth/host.py.
The name is ours alone: the older Dreambooth extension registers --dreambooth-models-path, and argparse
refuses a flag added twice (its preload would die).
"""

FLAG = "--dreambooth-tab-models-path"


def preload(parser):
    if FLAG in getattr(parser, "_option_string_actions", {}):  # preload run twice in one process
        return
    parser.add_argument(
        FLAG, type=str, default=None, dest="dreambooth_tab_models_path",
        help="Dreambooth tab: folder for its Dreambooth models (default: <models dir>/dreambooth)")
