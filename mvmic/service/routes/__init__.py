"""HTTP routes of the MVMIC service, one ``APIRouter`` per module.

Each module exposes ``router``; ``mvmic.service.app.create_app`` includes them.
"""
