"""The provider's one setting: which geovision command to run."""

#: Settings > Options > Processing > Providers > geovision
EXECUTABLE_SETTING = "GEOVISION_EXECUTABLE"


def configured_executable():
    """The geovision command set in the provider's settings, or None (then PATH is searched)."""
    try:
        from processing.core.ProcessingConfig import ProcessingConfig
    except ImportError:  # Processing is not loaded
        return None
    value = ProcessingConfig.getSetting(EXECUTABLE_SETTING)
    text = str(value).strip() if value else ""
    return text or None
