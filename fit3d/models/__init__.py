"""fit3d.models"""
