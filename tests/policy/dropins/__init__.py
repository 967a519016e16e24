"""A plugin package for the tests, as a team's o2obroker/plugins directory would be."""
