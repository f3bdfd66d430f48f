# test_lifecycle_twisted.py: one Twisted-API host per class, module or session
import pytest
import pytest_twisted

pytestmark = pytest.mark.mailhost(users={"module@example.test": "pw"})  # module scope


@pytest_twisted.ensureDeferred
async def test_module_host(mailhost_module):
    await mailhost_module.deliver("module@example.test", b"Subject: kept\r\n\r\nx\r\n")
    assert len(await mailhost_module.wait_for_messages(1)) == 1


@pytest_twisted.ensureDeferred
async def test_module_host_is_shared(mailhost_module):
    assert [m.subject for m in mailhost_module.received] == ["kept"]
    await mailhost_module.reset()


@pytest.mark.mailhost(users={"class@example.test": "pw"})  # class scope
class TestOneHostPerClass:
    @pytest_twisted.ensureDeferred
    async def test_deliver(self, mailhost_class):
        await mailhost_class.deliver("class@example.test", b"Subject: c\r\n\r\nx\r\n")
        assert len(await mailhost_class.wait_for_messages(1)) == 1

    def test_same_host(self, mailhost_class):
        assert mailhost_class.users() == ["class@example.test"]
        assert len(mailhost_class.received) == 1


@pytest_twisted.ensureDeferred
async def test_session_host(mailhost_session):
    await mailhost_session.add_user("session@example.test", "pw")
    assert "session@example.test" in mailhost_session.users()
    await mailhost_session.reset()
