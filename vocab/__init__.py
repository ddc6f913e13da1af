"""The shared vocabulary of voxpipe: errors with stable codes, option building, metrics.

The bottom layer: it imports nothing else of voxpipe, and every other package may import it.
"""
