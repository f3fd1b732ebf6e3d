"""tessera.sampling"""
