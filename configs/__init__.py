"""The shipped experiment configs: installed as the package `braintumor.configs` (see pyproject.toml), so
`braintumor train quickstart` finds quickstart.yaml outside a clone too."""
