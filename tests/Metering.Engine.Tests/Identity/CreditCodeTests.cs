using Metering.Engine.Identity;

namespace Metering.Engine.Tests.Identity;

public sealed class CreditCodeTests
{
    [Theory]
    [InlineData("9144030071526726XG")] // Tencent Technology (Shenzhen), public registry
    [InlineData("914403001922038216")] // Huawei Technologies, public registry
    [InlineData("91350100M000100Y43")] // The worked example commonly given for GB 32100-2015
    public void Published_codes_are_valid(string code) => Assert.True(CreditCode.IsValid(code));

    [Theory]
    [InlineData("9144030071526726XH", "wrong check character")]
    [InlineData("914403001922038217", "wrong check digit")]
    [InlineData("9144030071526726X", "17 characters")]
    [InlineData("9144030071526726XGX", "19 characters")]
    [InlineData("9144030071526726xg", "lower case")]
    [InlineData("9144030071526726IG", "I is not in the alphabet")]
    [InlineData("91440300715267260Z", "Z is not in the alphabet")]
    [InlineData("", "empty")]
    public void Malformed_codes_are_invalid(string code, string why) => Assert.False(CreditCode.IsValid(code), why);

    [Fact]
    public void Check_character_completes_a_body_into_a_valid_code()
    {
        Assert.Equal('G', CreditCode.CheckCharacter("9144030071526726X"));
        Assert.Equal("914403001922038216", CreditCode.Complete("91440300192203821"));
    }

    [Fact]
    public void Check_character_of_a_body_with_a_foreign_symbol_is_an_error()
    {
        Assert.Throws<ArgumentException>(() => CreditCode.CheckCharacter("9144030071526726O"));
        Assert.Throws<ArgumentException>(() => CreditCode.CheckCharacter("914403"));
    }

    [Fact]
    public void Every_single_character_substitution_of_a_valid_code_is_caught()
    {
        // The check character is a weighted mod-31 sum with weights coprime to 31, so changing any
        // one symbol of a valid code always breaks it.
        const string code = "9144030071526726XG";
        const string alphabet = "0123456789ABCDEFGHJKLMNPQRTUWXY";
        for (int position = 0; position < code.Length; position++)
        {
            foreach (char replacement in alphabet)
            {
                if (replacement == code[position])
                {
                    continue;
                }

                string mutated = string.Concat(code.AsSpan(0, position), replacement.ToString(), code.AsSpan(position + 1));
                Assert.False(CreditCode.IsValid(mutated), mutated);
            }
        }
    }
}
