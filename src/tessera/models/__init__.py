"""tessera.models"""
