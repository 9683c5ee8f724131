"""The shell: the command line, the demo and the embedded development services. It imports
the packages below it lazily, inside the commands that use them."""
