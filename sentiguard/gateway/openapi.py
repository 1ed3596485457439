"""GET /openapi.json: the public API, written by hand. A test checks every public route is here."""

from __future__ import annotations

from typing import Any

from sentiguard import __version__
from sentiguard.settings import Settings

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "bad input: the message says what to send",
        401: "missing or wrong API key",
        413: "body too large",
        415: "Content-Type is not application/json",
        503: "load shed: retry after the Retry-After header's seconds",
    }
    return {str(s): _json(_ERROR, text[s]) for s in statuses}


def spec(settings: Settings) -> dict[str, Any]:
    g = settings.gateway
    keyed: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}] if g.api_key else []
    result = {
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "label": {"type": "string", "enum": ["positive", "negative"]},
            "label_zh": {"type": "string", "enum": ["正面", "负面"]},
            "score": {"type": "number", "description": "probability of the label"},
            "scores": {
                "type": "object",
                "properties": {"positive": {"type": "number"}, "negative": {"type": "number"}},
            },
            "model": {"type": "string", "enum": ["primary", "fallback"]},
            "model_version": {"type": "string"},
            "truncated": {"type": "boolean"},
            "degraded": {"type": "boolean", "description": "true when the fallback answered"},
            "reason": {
                "type": ["string", "null"],
                "enum": [None, "primary_down", "overloaded", "primary_timeout", "primary_error"],
            },
            "latency_ms": {"type": "number"},
        },
    }
    analyze_body = {
        "oneOf": [
            {
                "type": "object",
                "required": ["text"],
                "properties": {"text": {"type": "string", "maxLength": g.max_text_chars}},
            },
            {
                "type": "object",
                "required": ["texts"],
                "properties": {
                    "texts": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": g.max_texts,
                        "items": {"type": "string", "maxLength": g.max_text_chars},
                    }
                },
            },
        ]
    }
    plain = {"type": "object"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sentiguard",
            "version": __version__,
            "description": "Chinese sentiment analysis that keeps answering while its model "
            "fails. Every answer says which model gave it and why.",
        },
        "paths": {
            "/analyze": {
                "post": {
                    "summary": "Sentiment of one text or a batch (results in input order)",
                    "security": keyed,
                    "parameters": [
                        {
                            "name": "X-Deadline-Ms",
                            "in": "header",
                            "schema": {"type": "integer", "maximum": g.deadline_ms},
                            "description": "ask for a shorter primary deadline",
                        },
                        {"name": "X-Request-ID", "in": "header", "schema": {"type": "string"}},
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": analyze_body}},
                    },
                    "responses": {
                        "200": _json(
                            {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/Result"},
                                    {
                                        "type": "object",
                                        "properties": {
                                            "results": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/Result"},
                                            }
                                        },
                                    },
                                ]
                            },
                            "the answer",
                        ),
                        **_errors(400, 401, 413, 415, 503),
                    },
                }
            },
            "/health": {"get": {"summary": "liveness", "responses": {"200": _json(plain, "ok")}}},
            "/ready": {
                "get": {
                    "summary": "readiness: 200 whenever the gateway can answer",
                    "responses": {
                        "200": _json(plain, "ready"),
                        "503": _json(plain, "stopping"),
                    },
                }
            },
            "/status": {
                "get": {
                    "summary": "workers, fallback and watchdog state",
                    "security": keyed,
                    "responses": {"200": _json(plain, "status"), **_errors(401)},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "security": keyed,
                    "responses": {"200": {"description": "Prometheus text format"}},
                }
            },
            "/openapi.json": {
                "get": {"summary": "this document", "responses": {"200": _json(plain, "spec")}}
            },
            "/": {"get": {"summary": "the web UI", "responses": {"200": {"description": "HTML"}}}},
            "/static/{file}": {
                "get": {
                    "summary": "web UI files",
                    "parameters": [
                        {
                            "name": "file",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": {"description": "file"}},
                }
            },
        },
        "components": {
            "schemas": {
                "Result": result,
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }
