"""The HTTP server: OpenAI-compatible and LMDeploy-compatible routes in front of one Engine (aiohttp).

    from refengine.server.app import create_app, run_api_server
"""
