"""tessera.data"""
