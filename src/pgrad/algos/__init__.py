"""One file per algorithm: its config, its loss (the equation), ``prepare`` and ``update``.

``contract`` says what every on-policy algorithm provides; ``pgrad.registry`` names them. This
package imports nothing above it (no runner, no guard, no registry).
"""
