"""The dd-* command-line entry points."""

from dd.hostmem import keep_freed_memory

keep_freed_memory()  # every dd-* command: freed host memory is reused, not unmapped (dd/hostmem.py)
