"""ALFWorld on its real TextWorld PDDL engine: the data-layout loader, the env, an offline game
generator and an observation-only teacher. Submodules import textworld/alfworld when used."""
