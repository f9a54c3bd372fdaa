"""Typed dependencies for the routes: the service state, its settings, and the campaign token check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from adstream.settings import Settings
from auction_service.serving.state import ServiceState

_bearer = HTTPBearer(auto_error=False, description="AUCTION_API_TOKEN from the settings")


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.service.settings


StateDep = Annotated[ServiceState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def require_campaign_token(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Campaign endpoints need ``Authorization: Bearer <AUCTION_API_TOKEN>``."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "campaign endpoints need the header 'Authorization: Bearer <AUCTION_API_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    expected = settings.auction_api_token.get_secret_value().encode()
    if not hmac.compare_digest(credentials.credentials.encode(), expected):  # constant time
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the bearer token is not AUCTION_API_TOKEN")


CampaignAuth = Depends(require_campaign_token)
