"""get_model: names configs use, and a clear error for the others."""

import pytest

from nfnets_jax import models
from nfnets_jax.models import NFNet, NFRegNet, NFResNet, get_model, register_model, registry


def test_known_names():
    assert get_model("NFNet") is NFNet
    assert get_model("NFResNet") is get_model("NF_ResNet") is NFResNet
    assert get_model("NFRegNet") is get_model("NF_RegNet") is NFRegNet


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="Unknown model 'ResNet50'") as info:
        get_model("ResNet50")
    for name in ("NFNet", "NFResNet", "NF_ResNet", "NFRegNet", "NF_RegNet"):
        assert name in str(info.value)


def test_register_model_refuses_silent_overwrites(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_model("NFNetAlias", NFNet)
    assert get_model("NFNetAlias") is NFNet
    with pytest.raises(ValueError, match="already registered"):
        register_model("NFNetAlias", NFRegNet)
    register_model("NFNetAlias", NFRegNet, overwrite=True)
    assert "NFNetAlias" in models.model_names()
