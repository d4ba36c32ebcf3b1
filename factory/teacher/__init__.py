"""The teacher: OpenAI-compatible endpoints (local llama.cpp replicas or remote), one client for all."""

from factory.teacher.types import Completion, TeacherError

__all__ = ["Completion", "TeacherError", "TeacherClient", "TeacherConfig", "LocalTeacher"]


def __getattr__(name: str):  # lazy: `from factory.teacher import Completion` stays light
    if name == "TeacherClient":
        from factory.teacher.client import TeacherClient
        return TeacherClient
    if name == "TeacherConfig":
        from factory.teacher.config import TeacherConfig
        return TeacherConfig
    if name == "LocalTeacher":
        from factory.teacher.server import LocalTeacher
        return LocalTeacher
    raise AttributeError(name)
