"""tessera.text"""
