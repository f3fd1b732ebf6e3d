"""tessera.evaluation"""
