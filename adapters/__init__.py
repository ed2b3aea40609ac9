"""Trainable adapters and their trainers (installed as ``stylekit.adapters``)."""
