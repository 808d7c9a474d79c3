"""Command-line flags the extension honours; the WebUI calls preload(parser) before parsing its arguments.

--dreambooth-models-path DIR   where Dreambooth models live (default: <models>/dreambooth);
                               read back as shared.cmd_opts.dreambooth_models_path by dreambooth/host.py.
"""


def preload(parser):
    # The older Dreambooth extension may have added the same flag already: argparse would raise.
    if "--dreambooth-models-path" in getattr(parser, "_option_string_actions", {}):
        return
    parser.add_argument(
        "--dreambooth-models-path", type=str, default=None, dest="dreambooth_models_path",
        help="Dreambooth tab: folder for Dreambooth models (default: <models dir>/dreambooth)")
