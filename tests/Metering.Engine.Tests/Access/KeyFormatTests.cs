using Metering.Engine.Access;

namespace Metering.Engine.Tests.Access;

public sealed class KeyFormatTests
{
    [Fact]
    public void A_new_key_is_43_base64url_characters_and_never_starts_with_a_dash()
    {
        // One draw in 64 starts with '-' before the redraw; the chance that 10,000 unguarded draws all
        // miss it is (63/64)^10,000, about 10^-69.
        for (int i = 0; i < 10_000; i++)
        {
            string key = CredentialStore.NewKey();
            Assert.Equal(43, key.Length);
            Assert.NotEqual('-', key[0]);
            Assert.All(key, c => Assert.True(char.IsAsciiLetterOrDigit(c) || c is '-' or '_', $"{c} is not base64url"));
        }
    }

    [Fact]
    public void Keys_still_use_the_dash_after_the_first_character() =>
        Assert.Contains(Enumerable.Range(0, 1000).Select(_ => CredentialStore.NewKey()), key => key.Contains('-', StringComparison.Ordinal));
}
