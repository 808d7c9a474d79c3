"""The older sd_dreambooth_extension's preload, as its current version has it: flags added unguarded."""


def preload(parser):
    parser.add_argument("--dreambooth-models-path", type=str, default=None,
                        help="Path to directory to store Dreambooth model file(s).")
    parser.add_argument("--lora-models-path", type=str, default=None,
                        help="Path to directory to store Lora model file(s).")
