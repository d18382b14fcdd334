"""One module per command of the `braintumor` CLI; `braintumor.cli` builds the parser from them.

A command module holds:
  HELP                  one line for the command list of `braintumor --help`
  DESCRIPTION           the head of the command's own --help
  EPILOG                (optional) the tail of the command's own --help
  add_arguments(parser) its arguments, each with its help
  run(args)             checks the arguments, then calls the work in apps/, engine/, data/ or results/

The command's name is the module's name. Importing a command module must stay cheap: `--help` and
`validate` never load TensorFlow, so heavy modules are imported inside `run`, after
`shared.start_tensorflow` (which keeps TensorFlow's start-up lines off the terminal).
"""
