"""Fake entry points and registries for plugin-discovery tests (mkdocs
`PluginsTest` style), shared by the tests of every plugin group (not a test
module)."""

from matl_keras import registry as registry_lib


class FakeDist:
    def __init__(self, name, version):
        self.name = name
        self.version = version
        self.metadata = {"Name": name}


class FakeEntryPoint:
    def __init__(
        self, name, value, obj=None, error=None, dist=("fake-pkg", "1.2")
    ):
        self.name = name
        self.value = value
        self.dist = FakeDist(*dist)
        self._obj = obj
        self._error = error
        self.loads = 0

    def load(self):
        self.loads += 1
        if self._error is not None:
            raise self._error
        return self._obj


def make_registry(eps_by_group, on_load=None):
    """A `Registry` over `{entry-point group: [FakeEntryPoint, ...]}`."""

    def entry_points(group):
        return eps_by_group.get(group, [])

    return registry_lib.Registry(entry_points=entry_points, on_load=on_load)
