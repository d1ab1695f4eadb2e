"""Recipe YAMLs, shipped with panglot so `panglot quickstart` finds them from a wheel too."""
